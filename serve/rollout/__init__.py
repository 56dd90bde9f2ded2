"""Versions in production: a rollout per model (primary, weighted candidates, a shadow, steps and
gates), the router that splits traffic by it, the evidence recorded per arm and the analyser that
advances, holds or rolls back on that evidence. Nothing here runs a model: serve/core does, asking
this package which version answers and which one gets a mirrored copy."""
