"""The paper's figures as library functions and as ``dali-fame figure KIND`` (PNG files).

=============  ===============================================  ========================
module         figure                                           paper
=============  ===============================================  ========================
masks          FAME seed / soft / binary masks, background and  Figure 6
               merged clip over frames
cam            class-agnostic activation maps of encoders       Figure 1
temporal       temporal-kernel weights per layer, R(2+1)D       Figure 3
retrieval      queries with their nearest training videos       Figure 8
=============  ===============================================  ========================

``plot`` holds the shared matplotlib pieces (Agg backend: no display needed), ``common`` the
data and checkpoint loading (the evaluations' loaders and weight loading), ``command`` the CLI.
Nothing here touches CUDA: the figures run on the CPU (FAME through the torch reference).
"""
