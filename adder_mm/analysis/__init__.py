"""Measurements of models (torch alone): operation and energy counts
(``op_counter``) and the speed and memory benchmarks (``benchmark``) behind
tools/analysis_tools/. They build on the layers and quantization, so they
sit above them; nothing below imports from here. Import the submodules
directly (``from adder_mm.analysis.op_counter import count_ops``)."""
