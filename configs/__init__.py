"""The shipped configs, installed as package data of ``uniemox.configs`` (setup.py maps this
folder there) so that an installed package finds them from any working directory:
DeepSpeed JSON (zero*.json) and run recipes (*.yaml). Read them with ``uniemox.config.files``."""
