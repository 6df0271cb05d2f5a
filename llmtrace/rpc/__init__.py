"""gRPC servicers: the edge where wire messages meet the store and the query layer."""
