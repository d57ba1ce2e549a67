import XCTest
final class NanonisPlaceholderTests: XCTestCase { func testPlaceholder() {} }
