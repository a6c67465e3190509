"""The bad-input fuzz driver shared by tests/test_fuzz_*.py (and `make fuzz`).

`driver` holds the mode (bounded for `make test`, long for `make fuzz`), the input generators of
each interface and the tally of inputs tried and bad answers; `plugin` prints the tally in the
bench format at the end of a pytest session (`-p fuzz.plugin`).
"""
