fn main() {
    torch_link::emit(torch_link::Install::SitePackage);
}
