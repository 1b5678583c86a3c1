"""CoReS Label Studio ML backend."""
