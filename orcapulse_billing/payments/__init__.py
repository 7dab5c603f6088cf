"""Payment providers (one gateway module each) and the purchase flow that posts to the ledger."""
