"""A small multilayer perceptron in numpy: float training for the int8 models.

Layers are fully connected with ReLU between them; the last layer is linear (logits for
the classifier, the reconstruction for the autoencoder). Training is full-batch-free
mini-batch Adam with a fixed seed, so the same data and seed give the same weights.
"""

from __future__ import annotations

import itertools


class MLP:
    def __init__(self, sizes: list[int], seed: int):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.sizes = list(sizes)
        self.W = []  # (out, in), as TFLite's FULLY_CONNECTED stores them
        self.b = []
        for i, o in itertools.pairwise(sizes):
            self.W.append(rng.normal(0.0, (2.0 / i) ** 0.5, size=(o, i)))
            self.b.append(np.zeros(o))

    def forward(self, x, keep=False):
        """Output for inputs x (n, in); with keep, also every layer's output."""
        import numpy as np

        acts = [x]
        h = x
        for k, (W, b) in enumerate(zip(self.W, self.b)):
            h = h @ W.T + b
            if k < len(self.W) - 1:
                h = np.maximum(h, 0.0)
            acts.append(h)
        return (h, acts) if keep else h

    def _backward(self, acts, grad_out, l2):

        gW, gb = [None] * len(self.W), [None] * len(self.W)
        g = grad_out
        for k in range(len(self.W) - 1, -1, -1):
            gW[k] = g.T @ acts[k] + l2 * self.W[k]
            gb[k] = g.sum(axis=0)
            if k:
                g = (g @ self.W[k]) * (acts[k] > 0)
        return gW, gb

    def fit(self, x, loss_grad, *, epochs: int, batch: int, lr: float, l2: float, seed: int,
            weights=None, progress=None):
        """Adam on mini-batches. loss_grad(out, idx) -> (loss, d loss / d out) for rows idx."""
        import numpy as np

        rng = np.random.default_rng(seed)
        params = self.W + self.b
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
        n = len(x)
        hist = []
        for ep in range(epochs):
            order = rng.permutation(n)
            total = 0.0
            for s in range(0, n, batch):
                idx = order[s:s + batch]
                out, acts = self.forward(x[idx], keep=True)
                loss, g = loss_grad(out, idx)
                total += loss * len(idx)
                gW, gb = self._backward(acts, g, l2)
                t += 1
                for i, (p, gr) in enumerate(zip(params, gW + gb)):
                    m[i] = b1 * m[i] + (1 - b1) * gr
                    v[i] = b2 * v[i] + (1 - b2) * gr * gr
                    mh = m[i] / (1 - b1 ** t)
                    vh = v[i] / (1 - b2 ** t)
                    p -= lr * mh / (np.sqrt(vh) + eps)
            hist.append(total / n)
            if progress:
                progress(ep + 1, epochs, hist[-1])
        return hist


def softmax_xent(labels, n_classes, class_weight=None):
    """loss_grad for softmax cross-entropy (mean over the batch, optional class weights)."""
    import numpy as np

    y = np.eye(n_classes)[labels]
    cw = np.ones(n_classes) if class_weight is None else np.asarray(class_weight, float)

    def lg(out, idx):
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        w = cw[labels[idx]]
        loss = float(-(w * np.log(p[np.arange(len(idx)), labels[idx]] + 1e-12)).mean())
        return loss, (p - y[idx]) * w[:, None] / len(idx)

    return lg


def mse(target):
    """loss_grad for mean squared error against target rows."""

    def lg(out, idx):
        d = out - target[idx]
        return float((d * d).mean()), 2.0 * d / d.size

    return lg
