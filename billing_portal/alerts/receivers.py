"""Rating tells us a customer's usage moved: evaluate alerts and auto-recharge."""
