"""Side-by-side benchmarks of AOS, Nchan and Centrifugo: ``python -m loadtests.bench``."""
