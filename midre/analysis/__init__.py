"""The paper's analyses as library calls (and ``midre analyze`` commands).

- :mod:`.features`     Sec. 3.2: penultimate features of private / RE-private / reconstructed images,
                       PCA + convex hulls, with overlap numbers (``midre analyze features RUN``).
- :mod:`.curves`       the a_e sweep curve: Acc and AttAcc against a_e (``midre analyze curve RUN``).

The Sec. 3.3 / Table 1 concealment study trains and attacks through the pipeline, so it lives one
layer up, in :mod:`midre.concealment` (``midre analyze concealment [CONFIG] --out DIR``).
"""
