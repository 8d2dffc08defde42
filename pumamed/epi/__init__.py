"""Public-health data layer and models for diabetes outcomes in Mexican municipalities."""
