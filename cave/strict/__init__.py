"""Strict mode: agent code in a spawned, OS-confined worker; its authority brokered by the kernel.

``_worker`` is the worker's main, ``_channel`` the framing and descriptor passing, ``_sharing`` the
shared-memory pickling, ``_unpickle`` the kernel's data-only loader, ``_broker`` the kernel side of
requests, ``_shims`` the worker's convenience layer, ``_process`` the worker's life, ``_executor``
the executor the runtime uses in strict mode, and ``_mode`` the switch between modes.
"""
