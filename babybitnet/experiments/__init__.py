"""Experiments: the studies and benchmarks built on the book (the concept modules of ``babybitnet``).

``compare``, ``ablation``, ``ladder``, ``scale`` and ``finetune`` train models and report;
``bench`` and ``bench_kernels`` time things side by side. :mod:`babybitnet.experiments.study`
holds what they share. Nothing in the book imports from here.
"""
