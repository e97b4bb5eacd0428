"""``python -m cave``: launch the Cave kernel (the kernelspec's argv)."""

from ipykernel.kernelapp import IPKernelApp

from cave.kernel._kernel import CaveKernel

IPKernelApp.launch_instance(kernel_class=CaveKernel)
