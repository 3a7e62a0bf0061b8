"""Training package: FER-2013 in, evaluated model out, exported as the SavedModel the service loads."""
