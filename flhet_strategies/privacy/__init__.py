"""Privacy of weighted sums: differential privacy (:mod:`.dp`) and Paillier secure sums
(:mod:`.paillier`), as server-half wrappers and client steps around any algorithm."""
