"""Everything that speaks to Vast.ai: the SDK adapter, its rate limits, the offer search and
market, instances as a job sees them, bids.
"""
