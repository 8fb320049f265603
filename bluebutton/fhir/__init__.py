"""FHIR R4: validation (off the event loop, in worker processes), its speed-ups, the R4 types and
splitting a searchset into connect-sized Bundles."""
