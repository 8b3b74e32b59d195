"""A handler that records far more distinct metrics than any registry should keep: each
request names 10,000 new ones (its `offset` form field shifts the names)."""


def handle(data, context):
    if data is None:
        return None
    answers = []
    for idx, request in enumerate(data):
        offset = int(request.get("offset", b"0"))
        for n in range(offset, offset + 10000):
            context.metrics.add_time(f"Flood{n}", 1.0, idx=idx)
        context.metrics.add_time("PreprocessTime", 3.2, idx=idx)
        answers.append("ok")
    return answers
