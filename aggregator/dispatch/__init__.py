"""The dispatch application: rule sets, suggestions and approvals, over the Ledger seam only."""
