"""The domain floor: cases, records, sweeps, folding, costs and input errors. Imports no torch."""
