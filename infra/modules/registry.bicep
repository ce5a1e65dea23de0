// The container registry of the Azure ML workspace: where Azure ML builds and keeps the run
// environment's image (Ray, torch, the trainer's packages) and where the clusters pull it from.
// Declared here rather than left to Azure ML to create on first use, because a registry Azure ML
// creates itself has the admin user enabled; this one authenticates with Entra ID only. With the
// admin user off, the workspace's identity builds and pushes the image and the clusters'
// identities pull it (who grants what: modules/roles.bicep), per
// https://learn.microsoft.com/azure/machine-learning/how-to-identity-based-service-authentication
// ("Scenario: Azure Container Registry without admin user").
// No trustPolicy (Docker Content Trust): Azure refuses to enable it ("ContentTrustUnsupported: ...
// Content Trust is being deprecated and will be completely removed on March 31, 2028"); the Notary
// Project replaces it (https://aka.ms/acr/dctdeprecation).

@description('Azure region.')
param location string

@description('Registry name (5-50 letters and digits, globally unique).')
param name string

@description('Premium adds retention, private endpoints and zone redundancy.')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param sku string = 'Premium'

@description('Tags for every resource.')
param tags object = {}

var premium = sku == 'Premium'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    dataEndpointEnabled: premium
    zoneRedundancy: premium ? 'Enabled' : 'Disabled'
    // Azure ML builds the image with ACR Tasks, which reach the registry over its public endpoint
    // unless the workspace names an image-build compute inside the VNet (private endpoints for
    // the workspace and its registry are the next hardening step: see .checkov.yaml).
    publicNetworkAccess: 'Enabled'
    networkRuleBypassOptions: 'AzureServices'
    policies: premium ? {
      retentionPolicy: {
        status: 'enabled'
        days: 30
      }
      quarantinePolicy: {
        status: 'disabled'
      }
    } : {}
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
