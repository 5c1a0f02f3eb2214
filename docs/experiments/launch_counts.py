"""Kernel launches and host synchronisations of identify and deblur, counted on the CPU.

On a GPU, 256² costing as much as 512² (57 vs 58 ms on an H200) means the pipeline is bound
by launches and host synchronisations, not by arithmetic. Both can be counted without a GPU:
every ATen operator that reaches a backend kernel is one launch on CUDA (a
``TorchDispatchMode`` sees them after autograd and composite decompositions), and the
operators that make the host wait for a GPU are those that read a value back
(``_local_scalar_dense``: ``.item()``, ``float(t)``, ``if t:``), that size their output by
the data (``nonzero``, ``masked_select``, ``unique``, boolean indexing) or copy to the host
(``.cpu()``, ``.numpy()``, ``.tolist()``, counted by wrapping those methods).

The CPU's fused oneDNN kernels are switched off, so that each convolution, batch norm, ReLU
and addition counts once, as on CUDA. Launches are split into those inside the networks'
forward passes (on the model's device) and the others: since identification cuts,
normalises and chooses its windows on the CPU, only its network pass runs on a GPU.

Run: ``python docs/experiments/launch_counts.py [SIZE_PX]`` (default 512); prints one line per
stage with launches and synchronisations, and the most frequent operators.
"""

import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import napari_deepblur as ndb
from napari_deepblur.evaluation.bench import bench_image
from napari_deepblur.samples import make_blurred_sample

SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
           "unique_dim", "unique_consecutive"}  # fmt: skip
HOST_COPIES = ("cpu", "numpy", "tolist")


class Counter(TorchDispatchMode):
    def __init__(self, networks):
        super().__init__()
        self.ops = collections.Counter()
        self.host = collections.Counter()
        self.in_networks = self.forward_passes = self.depth = 0
        self.hooks = []
        for network in networks:
            self.hooks.append(network.register_forward_pre_hook(self._enter))
            self.hooks.append(network.register_forward_hook(self._leave))

    def _enter(self, *args):
        self.depth += 1
        self.forward_passes += 1

    def _leave(self, *args):
        self.depth -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        self.in_networks += self.depth > 0
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._saved = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, self._counting(name, method))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def _counting(self, name, method):
        def counted(tensor, *args, **kwargs):
            self.host[name] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def summary(self) -> str:
        launches = sum(self.ops.values())
        syncs = sum(n for op, n in self.ops.items() if op in SYNCING) + sum(self.host.values())
        detail = ", ".join(f"{op} {n}" for op, n in self.ops.most_common(8))
        copies = ", ".join(f".{k}() {v}" for k, v in self.host.items())
        syncing = ", ".join(f"{op} {n}" for op, n in self.ops.items() if op in SYNCING)
        return (
            f"{launches} launches ({self.in_networks} in {self.forward_passes} network passes), "
            f"{syncs} host synchronisations ({syncing}; {copies})\n    most frequent: {detail}"
        )


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    image = bench_image(size) if size > 128 else make_blurred_sample(0, size)["image"]
    model = ndb.load_model(device="cpu", precision="float32")
    ndb.deblur(image, ndb.identify(image, model), model)  # warm-up: caches, probes
    networks = [model.identification, model.deblurring]
    with torch.backends.mkldnn.flags(enabled=False):
        with Counter(networks) as identify_counts:
            estimate = ndb.identify(image, model)
        with Counter(networks) as deblur_counts:
            ndb.deblur(image, estimate, model)
    print(f"{size}² identify: {identify_counts.summary()}")
    print(f"{size}² deblur: {deblur_counts.summary()}")


if __name__ == "__main__":
    main()
