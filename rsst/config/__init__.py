"""The config: checks, the registry of buildable targets, resolvers and the sweep callback."""
