"""The broker: one process per host between the frontends and the workers, in rooms:

    loop.py               the poll loop: sockets, routing, signals, drain, main()
    scheduler.py          requests and workers: admission, batches, deadlines, liveness
    state.py              what is known of each request, worker and model; core lending
    models.py             which models are served: registry, management, catalog, gauges
    saved_models.py       run-time registrations kept on disk for a restarted broker
    pool.py               the worker processes: placement, start, reap, restart
    forkserver_client.py  the broker's side of the fork server
"""
