"""The amortised (black-box) family: neural processes read a context set and predict targets."""
