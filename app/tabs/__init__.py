"""Tabs of the sds3d app that live in their own module (each builds its inputs and wires its events).

:func:`app.ui.build_app` keeps the shared parts (the result panel, :func:`follow`, the gallery) and calls
a tab's builder inside its ``gr.Tab``; the builder gets what it needs from there as arguments.
"""
