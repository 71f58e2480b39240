"""The generic Flower faces: one Message-API and one compat strategy for any server half."""
