"""Accounts: users and their tokens and passwords, who is calling, and the sign-in pages."""
