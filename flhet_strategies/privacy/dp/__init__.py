"""Client-level differential privacy: clipping, Gaussian noise, sensitivity, accounting on
Flower's ``RdpAccountant``, and the :class:`~.mechanism.DifferentialPrivacy` wrapper that
privatizes any weighted-sum algorithm (central or distributed noise)."""
