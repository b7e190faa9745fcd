"""babybitnet: BitNet b1.58 from scratch, the reference package of the course.

Modules in lesson order: data, bigram, attention, gpt, quant, bitlinear,
train, ladder, presets, compare, checkpoint, bench, cli.
"""

__version__ = "0.1.0"
