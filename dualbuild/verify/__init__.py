"""Reading artifacts back and proving what they hold.

``trees`` compares the Docker layer and the ACI entry by entry; ``aci`` checks appc's rules;
``sets`` checks one build's files together; ``diff`` tells two builds of a recipe apart.
"""
