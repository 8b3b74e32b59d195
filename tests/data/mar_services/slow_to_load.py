"""A handler that takes a minute to initialise, as a large model's load does: its model
stays "loading" for as long as a test needs to look at it."""
import time


def handle(data, context):
    if data is None:
        time.sleep(60)
        return None
    return ["loaded"] * len(data)
