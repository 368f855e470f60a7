"""Model monitoring: drift accumulation and statistics, traffic, dashboard data, report."""
