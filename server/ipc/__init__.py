"""Moving requests and tensors between inferd's front processes and its engine process."""
