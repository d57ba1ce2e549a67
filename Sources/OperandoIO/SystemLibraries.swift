import CLibUSB
import CSerialPort

/// Versions of the system libraries the I/O layer is linked against, for provenance and `status`.
public enum SystemLibraries {
    public static var libserialportVersion: String {
        guard let s = sp_get_lib_version_string() else { return "unknown" }
        return String(cString: s)
    }

    public static var libusbVersion: String {
        guard let v = libusb_get_version() else { return "unknown" }
        return "\(v.pointee.major).\(v.pointee.minor).\(v.pointee.micro)"
    }
}
