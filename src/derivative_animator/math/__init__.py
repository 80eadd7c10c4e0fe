"""The mathematics: parsing what people type, notation, differentiation with its rule steps,
the curriculum, the scene's math header and the judge of a stated derivative. sympy, numpy
and the standard library only: no torch, no Manim."""
