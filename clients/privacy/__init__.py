"""Client steps of the privacy features (Flower-free): a DP noise share and a Paillier
secure sum, each run on either Flower face by ``clients.faces.steps``."""
