"""`python -m services.autoscaling`: the autoscaler service (services/autoscaling/service.py)."""

from services.autoscaling.service import main

main()
