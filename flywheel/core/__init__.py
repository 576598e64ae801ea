"""The foundation every layer shares: configuration, data contracts, the store, versioned
datasets, digests, codecs and the Ray pool helper. Imports nothing else of the project."""
