"""Image input/output: decode, encode, animations, output formats, provenance records."""
