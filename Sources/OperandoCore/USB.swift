/// Which USB device a transport opens: vendor and product id, and optionally its serial number
/// (read from the device) or where it is plugged in (the sysfs port path, `1-1.2`). Matching is
/// redone at every open, so a device that comes back at another address after a replug is found
/// again.
public struct USBDeviceMatch: Sendable, Equatable, CustomStringConvertible {
    public var vendor: UInt16
    public var product: UInt16
    public var serialNumber: String?
    public var portPath: String?

    public init(vendor: UInt16, product: UInt16, serialNumber: String? = nil, portPath: String? = nil) {
        self.vendor = vendor
        self.product = product
        self.serialNumber = serialNumber
        self.portPath = portPath
    }

    public var description: String {
        "usb " + SerialPortMatch.hex(vendor) + ":" + SerialPortMatch.hex(product) + (serialNumber.map { " serial \($0)" } ?? "")
            + (portPath.map { " at port \($0)" } ?? "")
    }

    public func matches(_ device: USBDeviceInfo) -> Bool {
        device.vendorID == vendor && device.productID == product
            && (serialNumber == nil || device.serialNumber == serialNumber) && (portPath == nil || device.portPath == portPath)
    }
}

/// A USB device as libusb enumerates it.
public struct USBDeviceInfo: Sendable, Equatable, Codable {
    public var bus: Int
    public var address: Int
    /// sysfs port path (`1-1.2`: bus 1, port 1, hub port 2).
    public var portPath: String
    public var vendorID: UInt16
    public var productID: UInt16
    public var deviceClass: UInt8
    public var manufacturer: String?
    public var product: String?
    public var serialNumber: String?

    public init(
        bus: Int, address: Int, portPath: String, vendorID: UInt16, productID: UInt16, deviceClass: UInt8, manufacturer: String? = nil,
        product: String? = nil, serialNumber: String? = nil
    ) {
        self.bus = bus
        self.address = address
        self.portPath = portPath
        self.vendorID = vendorID
        self.productID = productID
        self.deviceClass = deviceClass
        self.manufacturer = manufacturer
        self.product = product
        self.serialNumber = serialNumber
    }

    /// The usbfs node libusb opens.
    public var node: String { "/dev/bus/usb/" + Self.pad3(bus) + "/" + Self.pad3(address) }

    static func pad3(_ n: Int) -> String { String(repeating: "0", count: max(0, 3 - String(n).count)) + String(n) }

    /// As a port for `operandoctl ports` (transport "libusb").
    public var asPort: SerialPortInfo {
        SerialPortInfo(
            name: node, description: [manufacturer, product].compactMap { $0 }.joined(separator: " "), transport: "libusb",
            vendorID: vendorID, productID: productID, manufacturer: manufacturer, product: product, serialNumber: serialNumber,
            usbBus: bus, usbAddress: address, usbPortPath: portPath)
    }
}
