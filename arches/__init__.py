"""Architecture backends, one module each (installed as kvmcore.arches).

Every module registers its backend with `kvmcore.registry.register_arch`;
kvmcore imports each module found here, so a new architecture needs no edit
outside its own file.
"""
