print("fw")
