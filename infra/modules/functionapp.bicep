// The function app on Flex Consumption (Linux, Python 3.11), VNet-integrated, system identity.
//
// Why Flex Consumption: VNet integration (the app reaches the storage, Key Vault and the ARM /
// Azure ML endpoints through the integration subnet), a storage account with shared keys
// disabled (no Azure Files content share, identity-based deployment container), per-execution
// billing, and no timeout ceiling below the intake's worst case. Elastic Premium (EP1) would also
// work but needs an Azure Files share with a key, and bills a warm instance around the clock.
// Flex does not take FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION as app settings: the
// runtime is declared in functionAppConfig.

@description('Azure region.')
param location string

@description('Function app name (globally unique).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Integration subnet id (delegated to Microsoft.App/environments).')
param subnetId string

@description('Blob endpoint of the host storage account, ending with /.')
param storageBlobEndpoint string

@description('Name of the host storage account.')
param storageName string

@description('Deployment container in that account.')
param deploymentContainerName string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('rlq settings (RLQ_*) and trigger connections, merged over the host settings.')
param appSettings object

@description('Largest number of instances the plan may scale to.')
param maximumInstanceCount int = 10

@description('Memory per instance (MB): the Azure ML SDK is a large import.')
param instanceMemoryMB int = 2048

@description('Tags for every resource.')
param tags object = {}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var settings = union({
  AzureWebJobsStorage__accountName: storageName
  AzureWebJobsStorage__credential: 'managedidentity'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
}, appSettings)

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    virtualNetworkSubnetId: subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for item in items(settings): {
        name: item.key
        value: item.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = app.name
output principalId string = app.identity.principalId
output defaultHostName string = app.properties.defaultHostName
