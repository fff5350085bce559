"""Every cost figure: the ledger, bid and warm-instance shares.
"""
