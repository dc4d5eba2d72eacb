"""The OpenFlow 1.3 controller and the pipelines it renders."""
