// PalmSens MethodSCRIPT codec and driver (being written).
enum PalmSensDriverPlaceholder {}
