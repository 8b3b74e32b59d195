"""A model's output as the classes it favours most."""
import numpy as np


def top_probability(data, labels, top=5):
    scores = data.asnumpy().reshape(data.shape[0], -1)[0]
    best = np.argsort(-scores, kind="stable")[:top]
    return [{"probability": float(scores[i]), "class": labels[i]} for i in best]
