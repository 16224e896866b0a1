"""Property-based fuzzing of the daemon on real sockets, by what each fuzzer feeds it; the
inputs the fuzzers once broke it with have tests of their own (test_found_inputs.py)."""
