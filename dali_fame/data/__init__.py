"""Video data: synthetic world, video I/O, annotation readers, index, sampler and loaders.

Kept import-free on purpose: import the submodule you need (``dali_fame.data.video_io``, ...).
"""
