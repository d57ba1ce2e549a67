// PalmSens MethodSCRIPT device simulator (being written).
enum PalmSensSimulatorPlaceholder {}
